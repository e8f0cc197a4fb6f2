"""The research tools, apart from the train/evaluate core: the paper's tables (`tables`,
`reproduce`), the numbers behind its figures (`analysis`) and the figures (`figures`).

  python -m segrpn_jax.paper.reproduce --help
  python -m segrpn_jax.paper.figures --help
"""

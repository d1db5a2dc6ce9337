"""Networks: the latent-conditioned ensemble actor-critic (``ensemble``), running normalisers
(``normalizer``), PBT's stacked member networks (``stacked``) and the compiled / CUDA-graph
fast paths around them (``fast``). Imports only ``cpo.utils``."""

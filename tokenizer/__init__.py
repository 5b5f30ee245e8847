"""The SID stage (installed as genrec.tokenizer): RQ-VAE and residual k-means quantizers, collision resolution."""

"""Deep interests of catalog items (MLIM): LLM client, miners, store, merging and the `mine` stage.

- `genrec.interests.llm`: the one LLM client of genrec (OpenAI-compatible endpoints over httpx, local transformers
  models), JSON repair and retries; other stages (describe's LLM teacher) use it too.
- `genrec.interests.miners`: backends, prompts (genrec/prompts/mine_*.txt) and answer schemas.
- `genrec.interests.keyphrase`: the offline extractor (KeyBERT-style, MiniLM + MMR) for machines with no LLM.
- `genrec.interests.store`: SQLite store of answers and failures, so killed runs resume.
- `genrec.interests.merge`: near-duplicate interests of several models collapse, provenance kept.
- `genrec.interests.mine`: the stage, ``MineConfig`` + ``run_mine(run_dir, cfg)`` + ``main(argv)``.
- `genrec.interests.schema`: ``read_interests(path)``, the validating reader of interests.jsonl.

Submodules are imported on use, so importing this package is cheap.

Example:
    >>> from genrec.interests.mine import MineConfig, run_mine
    >>> run_mine(Path("runs/demo"), MineConfig())  # doctest: +SKIP
"""

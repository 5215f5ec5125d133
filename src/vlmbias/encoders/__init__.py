"""The encoder layer: one `Encoder` interface below the audit and the mitigations.

- `models`: the interface and its backends (open_clip, Hugging Face CLIP, peft LoRA adapters, a
  learned prompt array); `load_encoder(spec)` is the single front door for every model. A mitigated
  model `<base>~<method>` is its base model's spec plus the fitted artifact's folder (`adapter`,
  `prompts`), or plus a query-set `transform` block naming it (`vlmbias.config.model_spec`,
  `query_set_spec`).
- Text-side transforms that a mitigation fits and writes to disk, loaded and applied here:
  `projection` (Chuang et al.'s biased-prompt projection), `bendvlm` (per-query test-time
  debiasing against a labelled reference set), `saner` (a trained residual layer on the text
  embedding), `prompt_array` (learned prompt vectors prepended in the text tower);
  `transforms` applies a query set's transform block and wraps an encoder so that every text
  it encodes passes through a method's transform.

This package imports only the ground floor (`vlmbias`, `vlmbias.io`, `vlmbias.imagegate`);
`audit/`, `mitigate/` and `world/` build on it, never the other way round.
"""

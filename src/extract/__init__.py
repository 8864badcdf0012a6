"""Extraction runs: inputs → clips → encoder → feature files, table rows and the manifest.

- `images` + `image_run`: image folders → chunk files (`vjepa2_extractor.py`).
- `windows_run` + `window_sources`: frame folders and videos → one file per window (the pipeline);
  `inputs`: several inputs over shards (`vjepa2_sequential_extractor.py`).
- `layout`: every output name and path; `signature`: what must match to resume;
  `writer`: a record → feature file + table rows + manifest line; `pooling`: tokens → vectors.
- `seed`: the seed's classes `VJEPA2Extractor` and `SequentialVJEPA2Extractor` (their documented
  keywords → `src.options.EncoderOptions` + the run's options); the scripts re-export them.

Kept free of imports so that `src.extract.pooling` can be used by the table without loading the runs.
"""

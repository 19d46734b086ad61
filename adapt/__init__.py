"""`edge-bloodcls adapt`: a bundle for a new microscope, from a few labelled cells of its own.

It sits above train/ and convert/: it fine-tunes with train's model and exports, calibrates and
fits the trust statistics with convert's steps (so neither of those imports it).
  run.py       the command and the whole run (load, frame, fine-tune, export, check)
  data.py      the site's labelled and unlabelled cells, framed as capture crops them
  core.py      augmentation, checks and the site's operating point
  finetune.py  the fine-tune itself (rehearsal, distillation, WiSE-FT, L2-SP, self-training)
  evaluate.py  scoring as capture sees the cells, with intervals
"""

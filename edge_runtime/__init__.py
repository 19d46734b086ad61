"""The edge runtime: what runs on the Pi, without TensorFlow, in three rooms and the commands.

  core/     labels and input spec, image decoding, preprocessing, bundles, interpreter,
            classifier, trust, metrics, the shipped models
  capture/  sources and cameras, locate, motion, counting, the capture loop, the live page
  lab/      the session store, review server and page, report and exports
  cli.py    the runtime's commands

Nothing here imports TensorFlow or Keras; the rooms' rules are checked by import-linter (README,
"For the contributor").
"""

"""edge-bloodcls: blood-cell classifiers from training to the microscope."""

__version__ = "0.1.0"

"""Model and dataset names, importable without torch (command-line choices on devices and before argument
parsing)."""
MODEL_NAMES = ("offseg-t", "offseg-b", "offseg-l")
DATASET_NAMES = ("ade20k", "cityscapes", "coco-stuff164k", "pascal-context-59", "folder", "synthetic")

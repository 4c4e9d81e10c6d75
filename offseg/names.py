"""The model names, importable without torch (command-line choices on devices and before argument parsing)."""
MODEL_NAMES = ("offseg-t", "offseg-b", "offseg-l")

"""Engine plugins: one module per inference runtime, each exposing `load(path, options)`."""

"""The chain orchestrators above the four packages: the demo (train -> export -> INT8 -> run -> validate ->
report) and the benchmark."""

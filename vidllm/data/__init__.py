"""Data the project trains and evaluates on; :mod:`vidllm.data.synthetic` is the generated world."""

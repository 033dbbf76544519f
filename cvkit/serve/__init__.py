"""`cvkit serve`: a trained model behind HTTP (issue 19). :mod:`cvkit.serve.batcher` batches the
requests; nothing in this package imports torch at module level."""

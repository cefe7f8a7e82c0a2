"""The Python API's modules (exported from :mod:`tailor` itself): settings, fit, the model, results, audit."""

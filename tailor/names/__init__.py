"""Knowledge of categories by their names: an offline text encoder, the catalog's taxonomy, and the
zero-shot heads that let a classifier carry categories it has never seen a photo of."""

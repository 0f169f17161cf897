"""Select: a search's trials as rows, the candidates confirmed on fresh folds next to the reference models,
the ensemble over out-of-fold predictions, and the champion chosen from them."""

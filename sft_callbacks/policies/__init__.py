"""Sampling and loss-weighting strategies: each module holds a pure function (statistics -> weights) and a thin
callback that decides when to call it and logs what it did."""

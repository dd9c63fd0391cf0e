"""Everything the tests share: data builders and reference computations, the test Hub, loss-weighting helpers,
recipe workspaces and the processes tests launch."""

"""Training losses: triplet loss with online mining, label-smoothed classification."""

"""Classical CSI baselines used as reference points for trained models."""

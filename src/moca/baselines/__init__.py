"""What an operations researcher would use instead of a learned policy: a tuned threshold
(order-up-to) rule and rolling-horizon LP (MPC). Both see only what a learned policy sees
and act through the safety layer."""

from moca.baselines.mpc import MPCPolicy
from moca.baselines.threshold import ThresholdPolicy, tune_threshold

__all__ = ["MPCPolicy", "ThresholdPolicy", "tune_threshold"]

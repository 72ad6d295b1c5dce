"""Differentially private GSMP: random features, released sufficient statistics, learning."""

from gramfed.workers.dp_gsmp.estimator import DPGSMPRegressor
from gramfed.workers.dp_gsmp.features import RandomFeatures
from gramfed.workers.dp_gsmp.statistics import StatisticsSplit, SufficientStatistics, TargetRange

__all__ = [
    "DPGSMPRegressor",
    "RandomFeatures",
    "StatisticsSplit",
    "SufficientStatistics",
    "TargetRange",
]

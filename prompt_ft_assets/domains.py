"""Domain breakdown: metrics per domain of the evaluation examples, next to the overall metrics.

A dataset's spec names the metadata field and its out-of-domain values (datasets[].domain); each
evaluation example is then in_domain or out_of_domain. For CoLA the field is `source`, the
publication a sentence comes from: the validation rows from the train split's sources are in
domain, those from six other sources are not.
"""

from __future__ import annotations

import pandas as pd

from .metrics import classification_metrics, degenerate_run_flags
from .spec import DomainSpec

IN_DOMAIN = "in_domain"
OUT_OF_DOMAIN = "out_of_domain"
ALL_DOMAINS = "all"


class DomainError(ValueError):
    """A metadata value that the spec's domain lists do not cover, with the fix."""


def domain_labels(values: pd.Series, domain: DomainSpec) -> pd.Series:
    """in_domain or out_of_domain for each value of the domain field."""
    text = values.astype(str)
    out = text.isin(domain.out_of_domain)
    if domain.in_domain is not None:
        unknown = sorted(set(text[~out & ~text.isin(domain.in_domain)]))
        if unknown:
            raise DomainError(
                f"{domain.field} values {unknown} are in neither domain.in_domain nor domain.out_of_domain; "
                "add them to one of the lists, or drop in_domain so every value not out of domain is in domain"
            )
    return out.map({True: OUT_OF_DOMAIN, False: IN_DOMAIN})


def domain_metric_rows(
    predictions: pd.DataFrame, domains: pd.Series, n_classes: int, seed: int
) -> list[dict[str, object]]:
    """Metrics and flags of one run overall (domain 'all') and per domain.

    predictions has idx, label and prediction; domains maps idx to a domain label.
    """
    labeled = predictions.assign(domain=predictions["idx"].map(domains))
    missing = labeled["domain"].isna()
    if missing.any():
        raise DomainError(
            f"evaluation idx {labeled.loc[missing, 'idx'].head(5).tolist()} have no domain; the stored examples do not "
            "match the predictions, so materialize the dataset and the runs again"
        )
    groups = [(ALL_DOMAINS, labeled)] + [(name, group) for name, group in labeled.groupby("domain", sort=True)]
    rows = []
    for name, group in groups:
        metrics = classification_metrics(group["label"], group["prediction"], n_classes)
        flags = degenerate_run_flags(group["label"], group["prediction"], n_classes, seed=seed)
        rows.append({
            "domain": name, **metrics.as_dict(),
            **flags.columns(),
        })
    return rows

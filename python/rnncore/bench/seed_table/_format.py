"""Number formatting shared by the verdicts' readings and the tables."""

def _g(v, digits=2):
    return "—" if v is None else f"{v:.{digits}g}"


def _pow10(v):
    return "—" if v is None else f"10^{v:+.1f}"


def _ratio(profile):
    """A gradient profile's first/last ratio as a power of ten; "0" when the first step underflowed."""
    if not profile:
        return "—"
    if profile["first"] == 0.0 and profile["last"] > 0:
        return "0 (underflow)"
    return _pow10(profile["log10_first_over_last"])

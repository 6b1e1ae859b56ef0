"""Usage normalisation and cost. Pure: Decimal when computing, integer nano-dollars when stored."""

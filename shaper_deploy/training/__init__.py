"""Training super networks (sandwich rule). Nothing in the deploy path imports this package."""

"""agentbot: a Chatwoot agent bot that hands returning customers (and whoever the rules say) to humans."""

__version__ = "0.1.0"

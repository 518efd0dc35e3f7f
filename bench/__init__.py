"""The benchmark: the bot next to the ceiling (bare aiohttp) and the usual way (Flask + requests)."""

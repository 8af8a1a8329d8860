"""Human decisions on asked-about VIFs: the request and its vote rules (model), signed tokens, the
recorded vote (service), the poller's trigger, and the routes (web, page)."""

"""The daemon's read-only web UI: server-rendered pages over SQL and the daemon's own counters.

Modelled on datasette: Jinja2 templates and static files shipped inside the package, no JavaScript build
step, no request leaving the host (charts are inline SVG rendered here). `app.WebUI` adds the routes to the
daemon's `httpserver.HttpServer`; `queries` holds every SQL the pages read; `series` keeps the bounded
per-minute history of the daemon's counters; `charts` draws SVG; `auth` is the optional basic auth.
"""

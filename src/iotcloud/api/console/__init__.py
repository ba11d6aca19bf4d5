"""The web console (``/console``): server-rendered pages for the operator, signed in with the
operator token.

``routes.ROUTER`` mounts it; ``auth`` holds sessions, CSRF and the sign-in limit; ``render`` the
templates, static assets and charts; ``pages`` the page handlers, as thin as API routes: they
call the same services and render.
"""

from iotcloud.api.console.routes import ROUTER

ROUTES = [ROUTER]

__all__ = ["ROUTES"]

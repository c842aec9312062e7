"""Alert channels through apprise: the daemon's notifier over ``alerts.urls``,
one URL's sender (the desktop notifier), and a URL as apprise will use it
(secrets hidden, for ``doctor``).

The only module that imports ``apprise``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import apprise

from egresswatch.alert.targets import exposed_target

log = logging.getLogger(__name__)


def apprise_notifier(urls: Sequence[str]) -> tuple[Callable[[str, str], object], list[str]]:
    """``notify(title, body)`` sending to every usable URL (its result is apprise's,
    true when delivered) and the targets, secrets hidden. An unusable URL is
    logged and left out; a plain-http target a local user could take is logged."""
    ap = apprise.Apprise()
    for i, url in enumerate(urls, 1):
        if not ap.add(url):
            log.warning("alerts.urls: entry %d is not a usable apprise URL; ignored", i)
            continue
        exposed = exposed_target(url)
        if exposed:
            log.warning("alerts.urls: entry %d: %s", i, exposed)
    targets = [s.url(privacy=True) for s in ap]

    def notify(title: str, body: str) -> object:
        return ap.notify(body=body, title=title)

    return notify, targets


def apprise_target(url: str) -> str | None:
    """``url`` as apprise will use it, secrets hidden; None when apprise cannot
    use it (unknown scheme, missing plugin). For `doctor`."""
    ap = apprise.Apprise()
    if not ap.add(url):
        return None
    return str(next(iter(ap)).url(privacy=True))


def apprise_sender(url: str) -> Callable[[str, str, str], bool] | None:
    """A function sending ``(title, body, severity)`` to one apprise URL and
    returning whether it was delivered; None when apprise cannot use the URL.
    For the user-session desktop notifier."""
    ap = apprise.Apprise()
    if not ap.add(url):
        return None
    types = {"high": apprise.NotifyType.FAILURE, "medium": apprise.NotifyType.WARNING}

    def send(title: str, body: str, severity: str) -> bool:
        kind = types.get(severity, apprise.NotifyType.INFO)
        return bool(ap.notify(title=title, body=body, notify_type=kind))

    return send

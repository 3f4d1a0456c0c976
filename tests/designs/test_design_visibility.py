"""Who sees a design (public, shop, private) in every place designs are listed or read, and
the by-hash endpoints other shops fetch from: anonymous only when publishing and public."""

from __future__ import annotations

import hashlib
from typing import Any

import httpx
import pytest

from microfactory.accounts.models import Role
from microfactory.config import Settings
from tests.conftest import UserFactory
from tests.designs.conftest import CUBE_STL, post_design
from tests.designs.test_design_pages import browser_login

SCAD = b"width = 20; // [10:1:60]\ncube([width, 10, 5]);\n"


async def _designs(client: httpx.AsyncClient, make_user: UserFactory) -> dict[str, Any]:
    """An author with one design of each visibility, plus another member, an operator, an admin."""
    author, author_h = await make_user(Role.MEMBER)
    made = {}
    for visibility in ("public", "shop", "private"):
        resp = await post_design(
            client,
            author_h,
            [(f"{visibility}.scad", SCAD + visibility.encode() + b"\n")],
            title=f"The {visibility} one",
            visibility=visibility,
        )
        assert resp.status_code == 201, resp.text
        assert resp.json()["visibility"] == visibility
        made[visibility] = resp.json()
    _, other_h = await make_user(Role.MEMBER)
    _, operator_h = await make_user(Role.OPERATOR)
    _, admin_h = await make_user(Role.ADMIN)
    return {
        "author": author,
        "designs": made,
        "headers": {
            "author": author_h,
            "member": other_h,
            "operator": operator_h,
            "admin": admin_h,
        },
    }


# Which of the three designs each caller sees.
SEES = {
    "author": {"public", "shop", "private"},
    "member": {"public", "shop"},
    "operator": {"public", "shop"},
    "admin": {"public", "shop", "private"},
}


async def test_each_role_sees_only_what_the_visibility_allows_everywhere(
    client: httpx.AsyncClient, make_user: UserFactory, settings: Settings
) -> None:
    world = await _designs(client, make_user)
    designs = world["designs"]
    for role, headers in world["headers"].items():
        listed = (await client.get("/api/v1/designs", headers=headers)).json()
        assert {d["visibility"] for d in listed} == SEES[role], role
        for visibility, design in designs.items():
            seen = visibility in SEES[role]
            urls = [
                f"/api/v1/designs/{design['id']}",
                f"/api/v1/designs/{design['id']}/files/{design['files'][0]['id']}",
                f"/api/v1/designs/{design['id']}/parameters",
                f"/api/v1/designs/by-hash/{design['content_hash']}",
                f"/api/v1/designs/by-hash/{design['content_hash']}/files/"
                f"{design['files'][0]['sha256']}",
            ]
            for url in urls:
                resp = await client.get(url, headers=headers)
                assert resp.status_code == (200 if seen else 404), (role, visibility, url)
            by_query = await client.get(
                "/api/v1/designs", params={"content_hash": design["content_hash"]}, headers=headers
            )
            assert len(by_query.json()) == (1 if seen else 0), (role, visibility)
            check = await client.post(
                f"/api/v1/designs/{design['id']}/parameters",
                json={"parameters": {"width": 30}},
                headers=headers,
            )
            assert check.status_code == (200 if seen else 404), (role, visibility)
            job = await client.post(
                "/api/v1/jobs", json={"design_id": design["id"]}, headers=headers
            )
            if not seen:
                assert job.status_code == 404, (role, visibility, job.text)

    # A hidden design answers exactly like one that does not exist: nothing tells them apart.
    member = world["headers"]["member"]
    hidden = await client.get(
        f"/api/v1/designs/by-hash/{designs['private']['content_hash']}", headers=member
    )
    absent = await client.get(f"/api/v1/designs/by-hash/{'0' * 64}", headers=member)
    assert hidden.status_code == absent.status_code == 404
    assert hidden.json()["detail"].replace(
        designs["private"]["content_hash"], "X"
    ) == absent.json()["detail"].replace("0" * 64, "X")
    hidden_id = await client.get(f"/api/v1/designs/{designs['private']['id']}", headers=member)
    absent_id = await client.get("/api/v1/designs/99999", headers=member)
    assert hidden_id.json()["detail"].replace(
        str(designs["private"]["id"]), "N"
    ) == absent_id.json()["detail"].replace("99999", "N")


async def test_anonymous_callers_get_public_designs_only_while_the_shop_publishes(
    client: httpx.AsyncClient, app: Any, make_user: UserFactory
) -> None:
    world = await _designs(client, make_user)
    public = world["designs"]["public"]
    meta_url = f"/api/v1/designs/by-hash/{public['content_hash']}"
    file_url = f"{meta_url}/files/{public['files'][0]['sha256']}"

    # Publishing off (the default): no anonymous read at all, whatever the hash.
    assert (await client.get(meta_url)).status_code == 401
    assert (await client.get(file_url)).status_code == 401
    assert (await client.get("/api/v1/designs")).status_code == 401

    app.state.settings.network_publish = True
    meta = await client.get(meta_url)
    assert meta.status_code == 200, meta.text
    body = meta.json()
    assert body["content_hash"] == public["content_hash"]
    assert body["title"] == "The public one"
    assert body["licence"] == "CC-BY-4.0"
    assert body["provenance"] == []
    assert body["files"] == [
        {
            "path": "public.scad",
            "sha256": hashlib.sha256(SCAD + b"public\n").hexdigest(),
            "size": len(SCAD) + len(b"public\n"),
            "kind": "scad",
        }
    ]
    got = await client.get(file_url)
    assert got.status_code == 200
    assert got.content == SCAD + b"public\n"
    assert got.headers["content-type"].startswith("text/plain")
    assert got.headers["content-disposition"].startswith("attachment;")
    assert 'filename="public.scad"' in got.headers["content-disposition"]
    assert got.headers["x-content-type-options"] == "nosniff"
    # The other designs, and the listing, stay closed to anonymous callers.
    for visibility in ("shop", "private"):
        other = world["designs"][visibility]
        url = f"/api/v1/designs/by-hash/{other['content_hash']}"
        assert (await client.get(url)).status_code == 404
        assert (await client.get(f"{url}/files/{other['files'][0]['sha256']}")).status_code == 404
    assert (await client.get(f"/api/v1/designs/by-hash/{'1' * 64}")).status_code == 404
    assert (await client.get(f"/api/v1/designs/{public['id']}")).status_code == 401
    # Bad credentials are refused, not read as anonymous.
    bad = await client.get(meta_url, headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401


@pytest.mark.parametrize(
    "bad",
    ["abc", "A" * 64, "g" * 64, "0" * 63, "0" * 65, "%2e%2e"],
)
async def test_a_malformed_hash_is_a_clear_422(
    client: httpx.AsyncClient, member: dict[str, str], bad: str
) -> None:
    resp = await client.get(f"/api/v1/designs/by-hash/{bad}", headers=member)
    assert resp.status_code == 422, resp.text
    assert "64 lower-case hex" in resp.json()["detail"]
    files = await client.get(f"/api/v1/designs/by-hash/{'a' * 64}/files/{bad}", headers=member)
    assert files.status_code == 422
    assert "64 lower-case hex" in files.json()["detail"]


async def test_only_the_author_and_admins_change_the_visibility(
    client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    world = await _designs(client, make_user)
    shop = world["designs"]["shop"]
    headers = world["headers"]
    url = f"/api/v1/designs/{shop['id']}"
    for role in ("member", "operator"):
        refused = await client.patch(url, json={"visibility": "public"}, headers=headers[role])
        assert refused.status_code == 403, role
        assert "author" in refused.json()["detail"]
    mine = await client.patch(url, json={"visibility": "private"}, headers=headers["author"])
    assert mine.status_code == 200
    assert mine.json()["visibility"] == "private"
    assert (await client.get(url, headers=headers["member"])).status_code == 404
    by_admin = await client.patch(url, json={"visibility": "public"}, headers=headers["admin"])
    assert by_admin.json()["visibility"] == "public"
    bad = await client.patch(url, json={"visibility": "everyone"}, headers=headers["author"])
    assert bad.status_code == 422
    new_bad = await post_design(
        client, headers["author"], [("x.stl", CUBE_STL)], visibility="world"
    )
    assert new_bad.status_code == 422


async def test_the_page_shows_hash_provenance_and_visibility_and_filters_the_list(
    client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    world = await _designs(client, make_user)
    author = world["author"]
    private = world["designs"]["private"]
    await browser_login(client, author.username)
    page = await client.get(f"/designs/{private['id']}")
    assert page.status_code == 200
    html = page.text
    assert f'<code class="hash" id="content-hash">{private["content_hash"]}</code>' in html
    assert "private: its author" in html
    assert "Added at this shop." in html
    assert 'action="/designs/{}/visibility"'.format(private["id"]) in html
    assert "The private one" in (await client.get("/designs")).text
    token = html.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    changed = await client.post(
        f"/designs/{private['id']}/visibility", data={"visibility": "shop", "csrf_token": token}
    )
    assert changed.status_code == 303
    assert "shop: members of this shop only" in (await client.get(f"/designs/{private['id']}")).text
    await client.post(
        f"/designs/{private['id']}/visibility", data={"visibility": "private", "csrf_token": token}
    )

    other, _ = await make_user(Role.MEMBER)
    client.cookies.clear()
    await browser_login(client, other.username)
    listing = (await client.get("/designs")).text
    assert "The public one" in listing
    assert "The shop one" in listing
    assert "The private one" not in listing
    assert (await client.get(f"/designs/{private['id']}")).status_code == 404
    shop_page = (await client.get(f"/designs/{world['designs']['shop']['id']}")).text
    assert "Change visibility" not in shop_page  # not the author, not an admin

"""The price table: config as code (import, export, validation), the admin, and
the prices the router loads with a route."""

from __future__ import annotations

from io import StringIO

import pytest
import yaml
from asgiref.sync import async_to_sync
from django.core.management import call_command

from streaming.config_io import ConfigError, config_export, config_import
from streaming.models import ModelPrice, ModelRoute, Provider, RouteTarget
from streaming.providers import Price
from streaming.routing.routes import resolve_route

pytestmark = pytest.mark.django_db

CONFIG = """
providers:
  - {name: openai-main, kind: openai, base_url: "https://api.openai.com/v1", api_key_env: KEY}
routes:
  - model: chat-default
    targets:
      - {provider: openai-main, model: gpt-4o-mini}
prices:
  - {provider: openai-main, model: gpt-4o-mini, input_per_mtok: 0.15,
     cached_input_per_mtok: 0.075, output_per_mtok: 0.60}
"""


def export() -> dict:
    out = StringIO()
    call_command("sluice_config", "export", stdout=out)
    return yaml.safe_load(out.getvalue())


def test_prices_import_idempotently_and_export_back(tmp_path):
    path = tmp_path / "sluice.yaml"
    path.write_text(CONFIG)
    call_command("sluice_config", "import", str(path), stdout=StringIO())
    call_command("sluice_config", "import", str(path), stdout=StringIO())

    price = ModelPrice.objects.get()
    assert (price.provider.name, price.model) == ("openai-main", "gpt-4o-mini")
    assert (price.input_per_mtok, price.cached_input_per_mtok, price.output_per_mtok) == (
        0.15,
        0.075,
        0.60,
    )
    assert export()["prices"] == yaml.safe_load(CONFIG)["prices"]

    path.write_text(CONFIG.replace("output_per_mtok: 0.60", "output_per_mtok: 0.80"))
    call_command("sluice_config", "import", str(path), stdout=StringIO())
    assert ModelPrice.objects.get().output_per_mtok == 0.80


def test_an_exported_configuration_imports_into_an_empty_database_as_it_was(tmp_path):
    config_import(yaml.safe_load(CONFIG))
    document = config_export()
    ModelPrice.objects.all().delete()
    RouteTarget.objects.all().delete()
    ModelRoute.objects.all().delete()
    Provider.objects.all().delete()

    config_import(document)

    assert config_export() == document


@pytest.mark.parametrize(
    ("item", "says"),
    [
        ({"provider": "nobody", "model": "m", "input_per_mtok": 1, "output_per_mtok": 1}, "nobody"),
        ({"provider": "openai-main", "model": "m", "output_per_mtok": 1}, "input_per_mtok"),
        (
            {"provider": "openai-main", "model": "m", "input_per_mtok": -1, "output_per_mtok": 1},
            "input_per_mtok",
        ),
        (
            {
                "provider": "openai-main",
                "model": "m",
                "input_per_mtok": "lots",
                "output_per_mtok": 1,
            },
            "input_per_mtok",
        ),
        ({"provider": "openai-main", "model": "m", "per_token": 1}, "per_token"),
        ({"model": "m", "input_per_mtok": 1, "output_per_mtok": 1}, "provider"),
    ],
)
def test_a_bad_price_is_refused_with_where_and_why_and_nothing_is_imported(item, says):
    document = yaml.safe_load(CONFIG)
    document["prices"].append(item)

    with pytest.raises(ConfigError, match=r"prices\[1\]") as error:
        config_import(document)

    assert says in str(error.value)
    assert not Provider.objects.exists() and not ModelPrice.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_the_router_loads_a_targets_price_and_a_price_edit_reaches_the_next_request():
    config_import(yaml.safe_load(CONFIG))
    route = async_to_sync(resolve_route)("chat-default")
    assert route is not None
    assert route.targets[0].upstream.price == Price(0.15, 0.60, 0.075)

    price = ModelPrice.objects.get()
    price.output_per_mtok = 1.2
    price.save()  # the signal clears the route cache, as a route edit does
    route = async_to_sync(resolve_route)("chat-default")
    assert route is not None and route.targets[0].upstream.price == Price(0.15, 1.2, 0.075)

    price.delete()
    route = async_to_sync(resolve_route)("chat-default")
    assert route is not None and route.targets[0].upstream.price is None


def test_ops_add_a_price_in_the_admin_once_per_provider_model(admin_client):
    provider = Provider.objects.create(name="openai-main", kind="openai", base_url="https://x/v1")
    form = {
        "provider": provider.pk,
        "model": "gpt-4o-mini",
        "input_per_mtok": "0.15",
        "cached_input_per_mtok": "",
        "output_per_mtok": "0.6",
    }

    response = admin_client.post("/admin/streaming/modelprice/add/", form)
    assert response.status_code == 302
    price = ModelPrice.objects.get()
    assert price.cached_input_per_mtok is None and price.output_per_mtok == 0.6

    again = admin_client.post("/admin/streaming/modelprice/add/", form)
    assert again.status_code == 200 and "already exists" in again.content.decode()
    negative = admin_client.post(
        "/admin/streaming/modelprice/add/", {**form, "model": "o3", "output_per_mtok": "-1"}
    )
    assert negative.status_code == 200 and ModelPrice.objects.count() == 1
    listing = admin_client.get("/admin/streaming/modelprice/").content.decode()
    assert "gpt-4o-mini" in listing

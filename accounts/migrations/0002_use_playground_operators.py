"""The ``use_playground`` permission and the ``operators`` group that holds it."""

from typing import Any

from django.db import migrations


def create_operators(apps: Any, schema_editor: Any) -> None:
    using = schema_editor.connection.alias
    ContentType = apps.get_model("contenttypes", "ContentType")
    Permission = apps.get_model("auth", "Permission")
    Group = apps.get_model("auth", "Group")
    content_type, _ = ContentType.objects.using(using).get_or_create(
        app_label="accounts", model="apppolicy"
    )
    permission, _ = Permission.objects.using(using).get_or_create(
        content_type=content_type,
        codename="use_playground",
        defaults={"name": "Can stream in the admin playground"},
    )
    group, _ = Group.objects.using(using).get_or_create(name="operators")
    group.permissions.add(permission)


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [
        migrations.AlterModelOptions(
            name="apppolicy",
            options={
                "permissions": [("use_playground", "Can stream in the admin playground")],
                "verbose_name": "app policy",
                "verbose_name_plural": "app policies",
            },
        ),
        migrations.RunPython(create_operators, migrations.RunPython.noop),
    ]

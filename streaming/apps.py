from django.apps import AppConfig


class StreamingConfig(AppConfig):
    name = "streaming"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from accounts import admin as accounts_admin
        from streaming import signals
        from streaming.models import ModelRoute

        signals.connect()
        # An app's policy offers the configured routes as its allowed models.
        accounts_admin.model_names.append(ModelRoute.names)

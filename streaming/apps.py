from django.apps import AppConfig


class StreamingConfig(AppConfig):
    name = "streaming"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from accounts import admin as accounts_admin
        from audit import admin_filters, admin_record
        from streaming import signals, tail
        from streaming.core.outcome import error_classes
        from streaming.models import ModelRoute, Provider

        signals.connect()
        # An app's policy offers the configured routes as its allowed models.
        accounts_admin.model_names.append(ModelRoute.names)
        # The audit record offers "Watch live" while its stream runs.
        admin_record.stream_running.append(tail.stream_running)
        # The audit changelist offers the routes, providers and error classes there are.
        admin_filters.model_names.append(ModelRoute.names)
        admin_filters.provider_names.append(Provider.names)
        admin_filters.error_classes.append(error_classes)

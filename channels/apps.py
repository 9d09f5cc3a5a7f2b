from django.apps import AppConfig


class ChannelsConfig(AppConfig):
    name = "channels"
    label = "payment_channels"
    verbose_name = "Payment channels"

    def ready(self) -> None:
        from channels.registry import check_keys

        check_keys()

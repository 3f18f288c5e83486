"""The queue speaks the original catalog's Russian."""

from django.utils import translation

from queue_catalog.models import QueueRecord


def test_queue_labels_are_the_original_catalog_in_russian():
    with translation.override("ru"):
        meta = QueueRecord._meta
        assert str(meta.verbose_name_plural) == "записи очереди"
        assert str(meta.app_config.verbose_name) == "Очередь"
        assert [str(label) for _, label in meta.get_field("status").choices] == [
            "Запланировано",
            "Исполнение",
            "Готово",
            "Ошибка",
            "Отменено",
        ]
        assert str(meta.get_field("payload").verbose_name) == "параметры запуска"
        assert str(meta.get_field("start_count").verbose_name) == "кол-во запусков"


def test_queue_labels_are_english_by_default():
    with translation.override("en"):
        assert str(QueueRecord._meta.get_field("status").choices[0][1]) == "Scheduled"

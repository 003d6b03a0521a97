"""Apache Beam pipelines around the pure ``alp_curation`` functions."""

import logging


class _WithoutBigQueryNotice(logging.Filter):
    """Beam warns on import, through the root logger, that its BigQuery client (apitools) is
    missing: irrelevant to these pipelines, which never touch BigQuery, and alarming to a user
    reading the first line of a local run. Only that one message is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("apitools not found")


logging.getLogger().addFilter(_WithoutBigQueryNotice())

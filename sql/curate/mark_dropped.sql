-- Rows a dedup step dropped (table `gone`) take no part in later steps.
UPDATE live SET alive = FALSE WHERE rid IN (SELECT rid FROM gone)

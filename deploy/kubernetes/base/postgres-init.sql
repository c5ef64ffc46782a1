-- Run once by the postgres image on an empty data directory, as POSTGRES_USER (oih).
-- One database per service: no service reads another's tables.
CREATE DATABASE oih_iam;
CREATE DATABASE oih_components;
CREATE DATABASE oih_flows;
CREATE DATABASE oih_orchestrator;
CREATE DATABASE oih_scheduler;
CREATE DATABASE oih_snapshots;
CREATE DATABASE oih_secrets;

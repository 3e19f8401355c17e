DROP TABLE running_instances;
DROP TABLE schema_compatibility;

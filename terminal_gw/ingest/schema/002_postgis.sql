-- requires: postgis
-- Where the PostGIS extension is available: a geography point for each fix and latest
-- position, computed by the database from lat/lon, with spatial indexes.
CREATE EXTENSION IF NOT EXISTS postgis;
ALTER TABLE fixes ADD COLUMN geog geography(Point, 4326)
    GENERATED ALWAYS AS (
        CASE WHEN lat IS NOT NULL AND lon IS NOT NULL
             THEN ST_SetSRID(ST_MakePoint(lon, lat), 4326)::geography END
    ) STORED;
CREATE INDEX fixes_geog ON fixes USING gist (geog);
ALTER TABLE latest_fix ADD COLUMN geog geography(Point, 4326)
    GENERATED ALWAYS AS (ST_SetSRID(ST_MakePoint(lon, lat), 4326)::geography) STORED;
CREATE INDEX latest_fix_geog ON latest_fix USING gist (geog);

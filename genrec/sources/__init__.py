"""Raw data as it is published, read by the data stage (genrec.data dispatches here): Amazon Reviews 2018 and 2023
(`amazon`), RecBole atomic files (`recbole`), MiniOneRec's processing of such logs (`raw`), and the item and
timestamp checks every source shares (`records`)."""

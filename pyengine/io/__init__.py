"""Reading band images (Mosaic), planning tiles (TilePlan) and writing FITS."""

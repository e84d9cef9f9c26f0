"""What one analysis does, and all a Space needs besides the models and the page: video
(sampled frames), faces (MTCNN, crops, tracks), analysis (every model's scores and the verdict),
runtime (optional faster inference). Never imports training."""

"""A user's own SpeechBrain project, not ours: intent classification with an x-vector on fbank
features (SpeechBrain's speaker-id template, trained on intents). Nothing here imports QUADS."""

import speechbrain as sb


class IntentBrain(sb.Brain):
    """Fbank -> mean normalisation -> Xvector -> Classifier (log-probabilities)."""

    def compute_forward(self, batch, stage):
        """(B, 1, n_intents) log-probabilities of a batch of waveforms."""
        batch = batch.to(self.device)
        wavs, lens = batch.sig
        feats = self.modules.compute_features(wavs)
        feats = self.modules.mean_var_norm(feats, lens)
        embeddings = self.modules.embedding_model(feats, lens)
        return self.modules.classifier(embeddings)

    def compute_objectives(self, predictions, batch, stage):
        """NLL of the intents; error rate outside training."""
        intents, _ = batch.intent_encoded
        loss = sb.nnet.losses.nll_loss(predictions, intents)
        if stage != sb.Stage.TRAIN:
            self.error_metrics.append(batch.id, predictions, intents)
        return loss

    def on_stage_start(self, stage, epoch=None):
        """A fresh error-rate tracker for evaluation stages."""
        if stage != sb.Stage.TRAIN:
            self.error_metrics = self.hparams.error_stats()

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Keep the error rate; checkpoint the best model after validation."""
        if stage == sb.Stage.TRAIN:
            self.train_loss = stage_loss
            return
        self.error = self.error_metrics.summarize("average")
        if stage == sb.Stage.VALID:
            self.checkpointer.save_and_keep_only(meta={"error": self.error}, min_keys=["error"])

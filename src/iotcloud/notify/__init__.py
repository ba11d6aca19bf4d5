"""Outbound notifications (SMS, e-mail), captcha images and third-party sign-in verifiers."""

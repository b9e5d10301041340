"""The pages of the main window, one module each: data, models, train, chat, evaluate,
runs (listed in ``kala_app.main_window.PAGES``).

Every page is a QWidget constructed as ``Page(ctx)`` with the shared
:class:`kala_app.context.AppContext`.
"""

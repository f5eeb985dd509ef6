"""The console's REST API (Django REST framework) under ``/api/v1/``; schema at ``/api/v1/schema/``.

Modules: ``urls`` (routes), ``views`` (endpoints), ``serializers`` (request/response shapes),
``codec`` (key ids and value encodings), ``permissions`` (roles), ``errors`` (error body and
exception handler). Every cluster call goes through ``console.etcd.client()``.
"""
